//! A partition's stored customer records, also kept in memory as stored (encoded),
//! so that loading a customer the decoded cache let go is a decode, not a RocksDB
//! read.
//!
//! At a million customers the decoded cache (`engine.customer_cache`) holds a
//! fifth of them, and every other customer an event touches was read back from
//! RocksDB: a multi-get through the memtables, the block index, a block read and
//! its LZ4 decompression — 20 % of a 1M replay's CPU (BENCHMARKS.md). An encoded
//! record is ~260 bytes for a year's history, a fifth of its decoded form (~1.2
//! KiB), so the whole population fits in memory where the decoded one does not.
//!
//! Entries are by customer handle ([`crate::derived::Ids`]), filled by the scan
//! `open` already makes and at every write with the bytes written: an entry is
//! always the record the store holds, or the one the next write will store (a
//! customer the decoded cache let go between writes, see
//! `Processor::spill`). Memory is bounded by a
//! budget (`engine.record_cache_mb`): a record that would exceed it is not kept,
//! and from then on a customer without an entry is asked of the store. While no
//! record was ever refused (`complete`), a customer without an entry is known
//! not to be stored, and not even asked.

/// What the records know of one customer.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Its stored record.
    Held(&'a [u8]),
    /// It has no stored record.
    Absent,
    /// Not kept here: ask the store.
    Unknown,
}

/// Bytes an entry costs beyond its record: the slot's pointer and length.
const SLOT: usize = std::mem::size_of::<Option<Box<[u8]>>>();

#[derive(Debug)]
pub struct Records {
    held: Vec<Option<Box<[u8]>>>,
    /// Bytes held: records and slots.
    bytes: usize,
    budget: usize,
    /// Every stored record is held (none was ever refused for the budget).
    complete: bool,
}

impl Records {
    /// Records kept within `budget` bytes (0: none kept, every lookup asks the store).
    pub fn new(budget: usize) -> Records {
        Records {
            held: Vec::new(),
            bytes: 0,
            budget,
            complete: budget > 0,
        }
    }

    pub fn lookup(&self, handle: u32) -> Lookup<'_> {
        match self.held.get(handle as usize) {
            Some(Some(b)) => Lookup::Held(b),
            _ if self.complete => Lookup::Absent,
            _ => Lookup::Unknown,
        }
    }

    /// `record` is now `handle`'s record (in the store, or written at the next
    /// flush). False: not kept, for the budget (nor any older record of it).
    pub fn put(&mut self, handle: u32, record: &[u8]) -> bool {
        let h = handle as usize;
        if h >= self.held.len() {
            let grow = h + 1 - self.held.len();
            if self.bytes + grow * SLOT > self.budget {
                self.complete = false;
                return false;
            }
            self.held.resize_with(h + 1, || None);
            self.bytes += grow * SLOT;
        }
        let old = self.held[h].as_ref().map_or(0, |b| b.len());
        if self.bytes - old + record.len() > self.budget {
            // Over the budget: not kept (nor the stale one).
            self.bytes -= old;
            self.held[h] = None;
            self.complete = false;
            return false;
        }
        self.bytes = self.bytes - old + record.len();
        match &mut self.held[h] {
            // Same length (a customer's record rarely changes size): reuse it.
            Some(b) if b.len() == record.len() => b.copy_from_slice(record),
            e => *e = Some(record.into()),
        }
        true
    }

    /// A new budget. Past it, nothing is held any more (and the cache is no longer
    /// complete). Only while every held record is also stored.
    pub fn set_budget(&mut self, budget: usize) {
        if self.bytes > budget {
            self.held = Vec::new();
            self.bytes = 0;
            self.complete = false;
        }
        self.budget = budget;
    }

    /// Bytes held (records and their slots).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.held.iter().filter(|e| e.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stored record is held.
    pub fn complete(&self) -> bool {
        self.complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_held_is_the_last_record_put() {
        let mut r = Records::new(1 << 20);
        assert_eq!(r.lookup(3), Lookup::Absent);
        r.put(3, b"abc");
        r.put(0, b"x");
        assert_eq!(r.lookup(3), Lookup::Held(b"abc"));
        r.put(3, b"xyz");
        assert_eq!(r.lookup(3), Lookup::Held(b"xyz"));
        r.put(3, b"longer");
        assert_eq!(r.lookup(3), Lookup::Held(b"longer"));
        assert_eq!(r.lookup(1), Lookup::Absent);
        assert_eq!(r.bytes(), 4 * SLOT + 1 + 6);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn past_the_budget_records_are_asked_of_the_store() {
        // Room for two slots and 10 bytes.
        let mut r = Records::new(2 * SLOT + 10);
        r.put(0, b"12345");
        r.put(1, b"12345");
        assert!(r.complete());
        // A third slot does not fit: customer 2 is unknown from now on, and so is
        // any customer without an entry.
        assert!(!r.put(2, b"1"));
        assert!(!r.complete());
        assert_eq!(r.lookup(2), Lookup::Unknown);
        assert_eq!(r.lookup(0), Lookup::Held(b"12345"));
        // A record that grows past the budget is dropped, never left stale.
        assert!(!r.put(1, b"123456"));
        assert_eq!(r.lookup(1), Lookup::Unknown);
        assert!(r.bytes() <= 2 * SLOT + 10);
        // Its room is taken again by a record that fits.
        assert!(r.put(1, b"1234"));
        assert_eq!(r.lookup(1), Lookup::Held(b"1234"));
    }

    #[test]
    fn no_budget_holds_nothing() {
        let mut r = Records::new(0);
        r.put(0, b"a");
        assert_eq!(r.lookup(0), Lookup::Unknown);
        assert_eq!(r.bytes(), 0);
    }
}
