//! A state partition's outbox as the publisher sees it: one entry per written
//! batch (its outputs, dead letters, changelog copies and population summary, see
//! [`super::changelog`]), deleted once the broker acknowledged everything in it.
//!
//! Entries are numbered in write order. Below `floor` they were published and
//! deleted; below `sent` they were handed to the producer (perhaps not yet
//! acknowledged); below `next` they are written. A claim takes `[sent, next)` and
//! moves `sent` to `next`. Only the thread that holds the partition claims: the
//! worker right after its write, or the loop while the partition is back.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

use super::changelog::{
    entry_raw, entry_records, outbox_key, pack_into, unpack, Marker, RecordRef, PUBLISHED_KEY,
};
use crate::store::rocks::RocksStore;
use crate::store::{Batch, Cf, Store, StoreError};

/// Memory for unpublished outbox entries, over all the partitions of an instance;
/// beyond it (a long broker outage, or batches of outputs larger than it) entries
/// are read back from the store. One budget for all, not one a partition: a
/// partition catching up writes entries of tens of megabytes (a batch takes
/// everything queued while it waited for a worker), and a share of a fixed
/// per-partition bound was too small to keep even one of them.
const KEPT_BYTES: usize = 512 << 20;

#[derive(Clone)]
pub struct Outbox {
    partition: i32,
    store: Arc<RocksStore>,
    floor: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    /// The entries this process wrote and has not published yet, kept in memory
    /// (up to [`KEPT_BYTES`]) so the publisher need not read back from RocksDB what
    /// was just written (large entries rarely outlive a memtable).
    kept: Arc<Mutex<Kept>>,
}

struct Kept {
    entries: BTreeMap<u64, Arc<Vec<u8>>>,
    bytes: usize,
    /// The instance's total (`strata_outbox_kept_bytes`), shared by its outboxes.
    total: IntGauge,
}

impl Drop for Kept {
    /// A partition closed: what it kept counts no more.
    fn drop(&mut self) {
        self.total.sub(self.bytes as i64);
    }
}

impl Outbox {
    /// The outbox of a partition whose store holds entries `first..next`, keeping
    /// entries in memory while `kept_total` (the instance's) stays under
    /// [`KEPT_BYTES`].
    pub fn new(
        partition: i32,
        store: Arc<RocksStore>,
        first: u64,
        next: u64,
        kept_total: IntGauge,
    ) -> Outbox {
        Outbox {
            partition,
            store,
            floor: Arc::new(first.into()),
            sent: Arc::new(first.into()),
            next: Arc::new(next.into()),
            kept: Arc::new(Mutex::new(Kept {
                entries: BTreeMap::new(),
                bytes: 0,
                total: kept_total,
            })),
        }
    }

    /// The state partition whose outbox this is.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The partition's store.
    pub fn store(&self) -> &RocksStore {
        &self.store
    }

    /// Add an entry to the batch about to be written: numbered, stored packed
    /// under its number, and kept in memory for the publisher while the
    /// instance's bound allows.
    pub fn stage(&self, entry: Vec<u8>, batch: &mut Batch) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        batch.put_with(Cf::Outbox, &outbox_key(seq), |b| pack_into(&entry, b));
        self.keep(seq, entry);
        seq
    }

    /// Keep entry `seq` in memory if it fits.
    fn keep(&self, seq: u64, entry: Vec<u8>) {
        let mut kept = self.kept.lock().unwrap();
        // (Partitions on other threads may add theirs between the look and the
        // add: the bound is exceeded by at most an entry a worker.)
        if kept.total.get() as usize + entry.len() <= KEPT_BYTES {
            kept.total.add(entry.len() as i64);
            kept.bytes += entry.len();
            kept.entries.insert(seq, Arc::new(entry));
        }
    }

    /// Claim the entries not sent yet: they count as sent from now on. `None` when
    /// there are none. (After a restart, tombstones above `next` are out of range;
    /// those below the floor, which `sent` never is below, were published.)
    pub fn claim(&self) -> Option<Range<u64>> {
        let from = self
            .sent
            .load(Ordering::Relaxed)
            .max(self.floor.load(Ordering::Relaxed));
        let next = self.next.load(Ordering::Relaxed);
        self.sent.store(next, Ordering::Relaxed);
        (from < next).then_some(from..next)
    }

    /// Entries written but not published yet.
    pub fn unpublished(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - self.floor.load(Ordering::Relaxed)
    }

    /// Visit the records of the outbox entries in `range` in write order, each
    /// with its entry's sequence number and its place in the entry, read in place;
    /// `f` returns false to stop.
    pub fn visit(
        &self,
        range: &Range<u64>,
        f: &mut dyn FnMut(u64, u32, &RecordRef<'_>) -> bool,
    ) -> Result<(), StoreError> {
        self.each_entry(range.clone().map(|seq| (seq, ())), |seq, (), entry| {
            for (idx, r) in entry_records(entry).enumerate() {
                if !f(seq, idx as u32, &r.ok_or_else(|| self.unreadable())?) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Visit the records at `places` ((entry, place in it), in write order), and
    /// decode only those: the others are stepped over by their length. `f`
    /// returns false to stop. A place beyond its entry's records is unreadable.
    pub fn visit_at(
        &self,
        places: &[(u64, u32)],
        f: &mut dyn FnMut(u64, u32, &RecordRef<'_>) -> bool,
    ) -> Result<(), StoreError> {
        let by_entry = places.chunk_by(|a, b| a.0 == b.0).map(|c| (c[0].0, c));
        self.each_entry(by_entry, |seq, these, entry| {
            let mut raw = entry_raw(entry).enumerate();
            for &(_, idx) in these {
                let r = raw
                    .find(|(i, _)| *i as u32 >= idx)
                    .filter(|(i, _)| *i as u32 == idx)
                    .and_then(|(_, r)| r)
                    .and_then(RecordRef::decode)
                    .ok_or_else(|| self.unreadable())?;
                if !f(seq, idx, &r) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Run `f` on each entry of `entries` ((seq, what to do there), in order) as
    /// written: kept in memory, else read back and unpacked; an entry not there
    /// is skipped. Stops when `f` returns false.
    fn each_entry<T>(
        &self,
        entries: impl Iterator<Item = (u64, T)>,
        mut f: impl FnMut(u64, T, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for (seq, what) in entries {
            let kept = self.kept.lock().unwrap().entries.get(&seq).cloned();
            let go_on = match kept {
                Some(k) => f(seq, what, &k)?,
                None => match self.store.get(Cf::Outbox, &outbox_key(seq))? {
                    Some(s) => f(seq, what, &unpack(&s).ok_or_else(|| self.unreadable())?)?,
                    None => true,
                },
            };
            if !go_on {
                break;
            }
        }
        Ok(())
    }

    fn unreadable(&self) -> StoreError {
        StoreError::Backend(format!(
            "partition {}: an outbox entry is unreadable (delete the partition's state dir to restore it from the changelog)",
            self.partition
        ))
    }

    /// A transaction was aborted: send every entry not yet published again.
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
        b.put(Cf::Meta, PUBLISHED_KEY, last.encode());
        self.store.write(b)?;
        let mut kept = self.kept.lock().unwrap();
        for seq in seqs {
            if let Some(e) = kept.entries.remove(seq) {
                kept.bytes -= e.len();
                kept.total.sub(e.len() as i64);
            }
        }
        if let Some(last) = seqs.iter().max() {
            self.floor.fetch_max(last + 1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::changelog::{Dest, EntryWriter};

    /// An entry of one output record whose value is `n` bytes.
    fn entry(n: usize) -> Vec<u8> {
        let mut w = EntryWriter::with_capacity(n + 64);
        w.push_value(Dest::TierChanges, 1, b"c1", |b| b.resize(b.len() + n, b'x'));
        w.finish()
    }

    /// Write an entry as the flush hook does.
    fn write(o: &Outbox, e: Vec<u8>) -> u64 {
        let mut b = Batch::default();
        let seq = o.stage(e, &mut b);
        o.store.write(b).unwrap();
        seq
    }

    fn values(o: &Outbox, seq: u64) -> Vec<usize> {
        let mut v = Vec::new();
        o.visit(&(seq..seq + 1), &mut |_, _, r| {
            v.push(r.value.map_or(0, <[u8]>::len));
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn the_instance_keeps_entries_within_one_bound_for_all_its_partitions() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let total = IntGauge::new("kept", "kept").unwrap();
        // The instance's other partitions keep all but 3 MiB of the bound.
        let others = KEPT_BYTES as i64 - (3 << 20);
        total.set(others);
        let open = |i: usize| {
            let store = Arc::new(RocksStore::open(dirs[i].path(), 8, 4).unwrap());
            Outbox::new(i as i32, store, 0, 0, total.clone())
        };
        let (a, b) = (open(0), open(1));
        let kept = |o: &Outbox| o.kept.lock().unwrap().entries.len();

        // Partition 0 takes 2 MiB of what is left; partition 1's entry fits beside.
        write(&a, entry(2 << 20));
        let small = write(&b, entry(1000));
        assert_eq!((kept(&a), kept(&b)), (1, 1));
        let both = total.get();
        assert!(both > others + (2 << 20) && both as usize <= KEPT_BYTES);

        // The next one of partition 1 would go over the instance's bound: stored
        // only, and read back from the store, whole.
        let over = write(&b, entry(2 << 20));
        assert_eq!(kept(&b), 1, "not kept");
        assert_eq!(total.get(), both, "not counted");
        assert_eq!(values(&b, over), vec![2 << 20]);
        assert_eq!(values(&b, small), vec![1000]);

        // Published entries, and a closed partition's, count no more.
        b.published(&[small, over], &Marker::default()).unwrap();
        assert_eq!(kept(&b), 0);
        assert!(total.get() < both);
        let after = write(&b, entry(2 << 20));
        assert_eq!(kept(&b), 0, "still over with partition 0's entry");
        drop(a);
        assert_eq!(total.get(), others);
        let fits = write(&b, entry(2 << 20));
        assert_eq!(kept(&b), 1, "kept now that partition 0 is closed");
        assert_eq!(values(&b, after), vec![2 << 20]);
        assert_eq!(values(&b, fits), vec![2 << 20]);
        drop(b);
        assert_eq!(total.get(), others);
    }

    /// `visit_at` decodes the records at the places asked, across entries kept
    /// and read back, in order, and the same records `visit` gives there; an entry
    /// not there is skipped; a place past an entry's records is unreadable.
    #[test]
    fn records_are_visited_at_their_places() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RocksStore::open(dir.path(), 8, 4).unwrap());
        let total = IntGauge::new("kept", "kept").unwrap();
        let o = Outbox::new(0, store, 0, 0, total.clone());
        let entry_of = |tag: &str| {
            let mut w = EntryWriter::with_capacity(0);
            for i in 0..5u64 {
                let dest = if i % 2 == 0 {
                    Dest::Changelog
                } else {
                    Dest::TierChanges
                };
                w.push_value(dest, i, format!("{tag}{i}").as_bytes(), |b| {
                    b.extend_from_slice(format!("v{tag}{i}").as_bytes())
                });
            }
            w.finish()
        };
        let kept = write(&o, entry_of("a"));
        // Nothing more may be kept: the second entry is read back from the store.
        total.set(KEPT_BYTES as i64);
        let stored = write(&o, entry_of("b"));
        assert_eq!(o.kept.lock().unwrap().entries.len(), 1);

        let mut all = Vec::new();
        o.visit(&(kept..stored + 1), &mut |seq, idx, r| {
            all.push((seq, idx, r.to_owned()));
            true
        })
        .unwrap();
        assert_eq!(all.len(), 10);
        let places = [
            (kept, 0),
            (kept, 4),
            (stored, 1),
            (stored, 2),
            (stored + 7, 0),
        ];
        let mut seen = Vec::new();
        o.visit_at(&places, &mut |seq, idx, r| {
            seen.push((seq, idx, r.to_owned()));
            true
        })
        .unwrap();
        let want: Vec<_> = (all.iter())
            .filter(|(s, i, _)| {
                [(kept, 0), (kept, 4), (stored, 1), (stored, 2)].contains(&(*s, *i))
            })
            .cloned()
            .collect();
        assert_eq!(seen, want);
        assert_eq!(seen[2].2.key, b"b1".to_vec());

        // Stopping: only the first.
        let mut n = 0;
        o.visit_at(&places, &mut |_, _, _| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
        assert!(o.visit_at(&[(kept, 5)], &mut |_, _, _| true).is_err());
    }
}
